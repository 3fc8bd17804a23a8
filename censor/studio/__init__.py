"""What the studio's buttons call, one module per tab (app.py wires Gradio to it)."""
