"""The facade the app and the CLI share: `Lab` (`lab`), its configuration (`config`) and visitors' sessions
(`sessions`). May import every library package below it; never Gradio."""
