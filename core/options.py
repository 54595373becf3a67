"""What a job may ask for, where more than the API needs to know it: the decoding defaults
(the API applies them, the store records them, the worker compiles for them) and the limits
the model must accept.

The API's request schemas (api/schemas/jobs.py) document every field from these, so what
/openapi.json says is what a job gets.
"""

from __future__ import annotations

DEFAULT_BEAM_SIZE = 1  # greedy: the fastest search, and what a caption from `caption` gets
MAX_BEAM_SIZE = 10
DEFAULT_MAX_LENGTH = 20  # words; the worker compiles its searches for this length
MAX_LENGTH = 50
MAX_TEMPERATURE = 2.0  # 0: greedy or beam search; above 0 the words are sampled
MAX_SEED = 2**32 - 1  # the sampling noise's seed is a uint32
