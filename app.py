"""The censoring studio (Gradio Blocks). UI wiring only: every method lives in the censor package.

Run ``python app.py`` and open http://127.0.0.1:7860. Until the full studio lands this is a gallery
of fresh samples from the embedded Fashion-MNIST diffusion model.
"""

from __future__ import annotations

import os

import gradio as gr

from censor.studio import Studio

MODEL_DIR = os.environ.get("CENSOR_MODEL_DIR")


def build_app(studio: Studio | None = None) -> gr.Blocks:
    studio = studio or Studio(MODEL_DIR)

    def generate(n, steps, seed, progress=gr.Progress()):
        progress(0.0, desc="sampling")
        return studio.fresh_gallery(int(n), int(steps), int(seed), progress=lambda f: progress(f, desc="sampling"))

    with gr.Blocks(title="Censoring studio") as demo:
        gr.Markdown("# Censoring studio\nFresh samples from the embedded Fashion-MNIST diffusion model.")
        with gr.Row():
            n = gr.Slider(1, 64, value=32, step=1, label="images")
            steps = gr.Slider(5, 100, value=30, step=1, label="DDIM steps")
            seed = gr.Number(value=0, precision=0, label="seed")
        go = gr.Button("Generate", variant="primary")
        gallery = gr.Gallery(label="samples", columns=8, height="auto", elem_id="gallery")
        go.click(generate, inputs=[n, steps, seed], outputs=gallery, api_name="generate")
    return demo


if __name__ == "__main__":
    build_app().queue(default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
