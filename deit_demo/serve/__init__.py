"""Serving visitors: the serving thread and the CPU budget (`threads`), the loaded variants (`runners`), Auto's choice
(`auto`), batching and lanes (`classify`), and the component that owns them all (`server.Server`). May import `core`,
`train`, `variants` and `measure`."""
