"""Stage 6 of the data path: weight versions from the learner to the generators.

`publish` (learner side) writes and announces, `apply` (generator side) verifies and swaps them
into the running engine. How the tensors travel is a transport: the interfaces in `base`, one
module per transport (`filesystem`, `collective`, `shm`), chosen by name in `registry`.
"""
