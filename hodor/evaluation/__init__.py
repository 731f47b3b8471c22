"""``hodor-eval``: J&F of predicted masks by the DAVIS 2017 semi-supervised protocol.

:mod:`.measures` holds J, F and their statistics for one object, :mod:`.benchmark` scores
sequences and datasets, :mod:`.report` writes and prints the results. Nothing here needs torch.
"""
