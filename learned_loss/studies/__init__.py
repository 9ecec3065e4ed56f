"""Studies that compare objectives: the main comparison (compare) and its arms, the
noisy-demonstration grid, the scaling, diversity and emergence studies, sweeps,
and the statistics every report uses."""
