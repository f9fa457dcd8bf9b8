"""The command layer of `python run_sweep.py`, above both the sweep layer (`harness/sweep/`) and the analysis
(`analysis/`): `cli` parses the command line, `verbs` opens the sweep once and hands it to the layer that does
the work. Nothing below imports this package.
"""
