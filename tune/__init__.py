"""Ray Tune sweeps (prompt lengths, kernel widths, presets); arrives with the sweeps issue."""
