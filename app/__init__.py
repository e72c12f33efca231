"""The PySide6 front end and the command line of Anomaly Inspector."""
