"""The online loop's roles (`generator`, `orchestrator`, `learner`: each one module holding its
entry point `main` and its loop; the reward role is `critique/server.py`), listed in `roles.ROLES`,
and their supervisor (`ixt up` / `status` / `down`) and the main job (`ixt run`)."""
