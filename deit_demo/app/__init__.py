"""The Gradio app: layout (`ui`), handlers, input boxes (`inputs`), agent tools (MCP), the About text, and the
process-wide settings a server needs (`process`). The only package that imports Gradio. Every job goes through the
`service.Lab` facade; `measure`'s charts, tables and results files are imported to render what comes back."""
