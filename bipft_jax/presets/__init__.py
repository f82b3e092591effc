"""Model presets, shipped inside the package (data only: nothing of ours is imported here).

* one module per method, `fp`, `bibert`, `bit`, `bipft`: `get_config()` returns the method's
  flags (`hidden_act` and every `quant` field), each citing the reference code by file:line;
* `sizes`: `get_config(size)` for `tiny`, `mini`, `small`, `base`, `large`.

`bipft_jax.model.presets.get_model_config(method, size, **overrides)` merges them into a
validated `BertConfig`.
"""
