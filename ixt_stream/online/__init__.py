"""Online-loop roles (the generator) and their supervisor (`ixt up` / `status` / `down`)."""
