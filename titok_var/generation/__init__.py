"""Stage-2 generation: MaskGIT mask schedules and iterative parallel decoding."""
