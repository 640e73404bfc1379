"""The training-time methods of the papers, one module each (XNet: `xnet.py`)."""
