"""The Gradio app: layout (`ui`), handlers, agent tools (MCP) and the About text. The only package that imports
Gradio; it calls the library through `service.Lab` only."""
