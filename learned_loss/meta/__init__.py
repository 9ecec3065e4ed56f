"""Meta-gradient estimators of the outer loop (tbptt, es, pes, full_es) behind one interface."""
