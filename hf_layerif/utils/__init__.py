"""Small helpers shared by every part of the package (the ground floor: imports nothing else of ours)."""
