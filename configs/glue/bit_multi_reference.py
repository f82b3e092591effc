"""BiT multi-distillation W1A2 -> W1A1 with exact parity (docs/deviations.md): stage 0 (`bit:a2`,
every activation binarizer and the pooler input at 2 bits, `modeling_bert_quant.py:377-382`)
distils from the ready FP teacher (`kd.teacher_path`), stage 1 (W1A1) from stage 0 as is.
The reference does not script the chain; which weights start each stage is unclear there
(methods.md §4.2), here stage 1 starts from stage 0's best weights. Same keys as
`bit_reference.py`.
"""

from pathlib import Path

from bipft_jax.train.config_io import load_config


def get_config(arg=None):
    c = load_config(f"{Path(__file__).with_name('bit_reference.py')}:{arg or 'sst2'}")
    c.chain = "bit:a2,bit"
    c.sweep.presets = c.chain
    return c
