"""The ground floor: errors, paths (the home folder), CPUs and threads, the model catalog, image input, the artifact
store, statistics and file helpers. Imports nothing else of deit_demo."""
