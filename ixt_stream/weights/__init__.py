"""Weight versions: `publish` (learner side) writes and announces, `apply` (generator side) verifies
and swaps them into the running engine. Both sides name their transport the same way."""
