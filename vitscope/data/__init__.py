"""Image sets: the embedded demo set (folders and CSV labels come with `vitscope build`)."""
