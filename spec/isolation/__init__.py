"""The wall between the suite and a submission: the Driver interface, the in-process
LocalDriver, the IsolatedDriver with its worker processes and wire protocol, and the wall
itself (a fork server per pytest phase inside a bubblewrap sandbox or behind a dedicated
uid: wall.py, sandbox.py, forkserver.py). docs/threat-model.md says what each mode stops."""
