"""The outside layer: launcher, watchdog, kill ladder, /proc scans (design sections 3.3 and 3.4)."""
