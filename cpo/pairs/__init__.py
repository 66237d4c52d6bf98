"""Scored candidates -> preference pairs: the paper's rule (``rule``), the rows it writes (``build``), the
noised-negatives ablation (``noise``) and the build's report with the paper's Table-1 win counts (``report``)."""
