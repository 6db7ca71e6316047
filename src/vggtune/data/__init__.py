"""Data: finding labelled images (class folders, Kaggle names or a CSV manifest), opening each one
safely, and splitting them without leakage. `images` opens one file and says why it cannot be used;
`dataset` discovers, checks and splits; `manifest` reads a CSV; `items` holds what they hand on (the
usable items, the splits, and each rejected file with its reason and kind). Nothing here knows a network."""
