"""What the app and the command line show: tables, the weights banner and charts (`report`, `charts`), shared so that
both show the same. Turns results into text and figures, measures nothing. May import core, train, variants, measure
and serve; never Gradio."""
