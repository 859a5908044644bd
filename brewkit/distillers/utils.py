"""Where brewkit 0.1 kept the distillers' helpers; they now live with their concept:

- batch structure, masks and normalisation counts: :mod:`brewkit.engine.batches`
- random number generators: :mod:`brewkit.engine.rng`
- resumable data cursors: :mod:`brewkit.engine.cursor`
- logits selection and probability shift: :mod:`brewkit.distillers.logits`

This module re-exports them under their old names for code written against 0.1; new code imports from the
modules above.
"""
from ..engine.batches import (  # noqa: F401
                              DENOMINATORS,
                              MASK_KEYS,
                              batch_size_of,
                              call_model,
                              denominator_counts,
                              detach_to_cpu,
                              find_mask,
                              move_to_device,
                              split_batch,
                              split_example_index,
)
from ..engine.cursor import LoaderCursor, RecordedCursor  # noqa: F401
from ..engine.rng import get_rng_state, seed_everything, set_rng_state  # noqa: F401
from .logits import probability_shift_, select_logits_with_mask  # noqa: F401

UNITS = DENOMINATORS
unit_counts = denominator_counts
CachedCursor = RecordedCursor
