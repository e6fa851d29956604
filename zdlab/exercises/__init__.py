"""One module per notebook with that notebook's exercises (``nbNN.py``); see zdlab/checks.py."""
