"""Stage 3: (Sample, Critique) -> ConditionedSample, the IXT training format (`format`), the modes it
writes feedback in (`modes`), the leak check (`leak`) and the record a trained model keeps (`record`).

Imports nothing, so the config can read the mode table without importing the format."""
