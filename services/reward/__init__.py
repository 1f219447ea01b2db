"""The reward-model service role (`ixt serve reward`): see `main.py`."""
