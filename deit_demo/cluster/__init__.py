"""Beyond one machine, on Ray: classification served by Ray Serve replicas behind the same `Server` interface
(`server`, `replica`), one pair as a plain HTTP endpoint for production (`endpoint`), and attaching to a cluster or
starting a local one on loopback (`connect`). The only package that imports `ray`, and only when a cluster is asked
for: without one, nothing of Ray loads. May import core, train, variants, measure and serve; never Gradio."""
