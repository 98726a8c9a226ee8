"""One module per method: mobanet, dplnet, gopt, spm, rpn."""
