"""The wall between the suite and a submission: the Driver interface, the in-process
LocalDriver, the IsolatedDriver with its worker process and wire protocol."""
