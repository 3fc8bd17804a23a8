"""The censoring studio (Gradio Blocks). UI wiring only: every method lives in the censor and rlhf packages.

Run ``python app.py`` and open http://127.0.0.1:7860. Data (labels, rewards) goes to
``$CENSOR_DATA_DIR`` (default ./studio_data; on a Space, point it at the persistent storage).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import numpy as np

from censor.core.errors import CensorError, JobCancelled
from censor.core.settings import COUNT, DEFAULT_GUIDANCE, DEFAULT_REWARD, STEPS, STRICT_MODES
from censor.diffusion.sources import options_from_env
from censor.eval.features import load_features
from censor.rewards.architectures import REWARD_KINDS
from censor.studio.common import DELETE_CACHE, LIMITS, PAGE_SIZE, display, inert
from censor.studio.core import Studio
from censor.studio.galleries import STRICT_P_RANGE
from censor.studio.readouts import gallery_readout, training_summary
from censor.studio.space import JobGate, browser_secret
from censor.studio.rlhf import (COMPARE_DEFAULTS, COMPARE_LIMITS, adapted_model, adapter_steps_note, available_adapters,
                                preference_readout, run_comparison)
from rlhf.compare import METHODS as COMPARE_METHODS


UI = Path(__file__).resolve().parent / "censor" / "studio" / "ui"  # the label grid's HTML, CSS and keys
GRID_TEMPLATE, GRID_CSS, GRID_JS = ((UI / name).read_text() for name in ("grid.html", "grid.css", "grid.js"))
# AA contrast: Gradio's default grey helper text (#9ca3af, 2.5:1 on white) darkened to 7.6:1
THEME = gr.themes.Default().set(body_text_color_subdued="*neutral_600", block_info_text_color="*neutral_600",
                                block_label_text_color="*neutral_600")
# run_history=False: Gradio would keep every output (label grids, galleries) in the browser's storage
LAUNCH = dict(theme=THEME, css=(UI / "app.css").read_text(), run_history=False)  # what every launch passes
# The public Space's queue: one run at a time per event (the comparison has its own slot) and at most
# 32 waiting; beyond that Gradio refuses the request (HTTP 503) and the page says "This application is
# currently busy. Please try again." (see docs/reliability.md).
# api_open=False: no event may skip the queue (and its one-job-per-browser check) by a direct POST.
QUEUE = dict(default_concurrency_limit=1, max_size=32, api_open=False)
MAX_UPLOAD = "64mb"  # bundles and sessions are far smaller; Gradio refuses bigger uploads before they land
HELP = ("Click an image to mark it **malign** (red); click again for **unsure** (dashed, left out of training); "
        "a third click resets it to benign. Keyboard: Tab reaches the grid; arrows move, space or m marks, "
        "u undoes, n / p change page. Every click is saved at once.\n\n"
        "**Where is it?** (optional) Drag across a malign part to box it (the image turns malign); shift+click "
        "puts a default box there; **b** boxes the focused image and moves the box corner by corner; **Escape** "
        "takes it away. Boxes teach the local-patch reward where to look.")
IMPLICIT = ("**Every image you are shown counts as benign unless you mark it** (the paper's convention). "
            "Skipped a page without looking? **Leave page out** turns its unmarked images unsure, out of training.")


def build_app(studio: Studio | None = None, gate: JobGate | None = None) -> gr.Blocks:
    """The studio's Blocks, its queue set to ``QUEUE``; ``studio`` defaults to the one ``$CENSOR_MODEL`` names,
    ``gate`` (one heavy job per browser, each under a time limit, cancellable) to ``JobGate()``."""
    if studio is None:
        source, options = options_from_env(os.environ)  # CENSOR_MODEL, CENSOR_PROMPT, ... (censor/sources.py)
        studio = Studio(source, model_options=options, pool_dir=os.environ.get("CENSOR_POOL_DIR"))
    features = ["(none)"] + sorted(load_features())
    gate = gate or JobGate()

    def one_job_each(request: gr.Request, *inputs):  # the request first: Gradio injects it only there
        """Heavy events' validator: runs as Gradio queues the job, so a flood is refused at the door."""
        gate.reserve(request.session_hash)
        return [gr.validate(True, "") for _ in inputs]  # Gradio wants one verdict per input

    @contextmanager
    def job(request, progress, what):
        """One heavy job under the gate; its progress bar says ``what`` unless the library says more."""
        def show(fraction, desc=None):
            progress(fraction, desc=f"{what} · {desc}" if desc else what)
        with gate.job(request.session_hash, show) as tick:
            yield tick

    def grid_value(sid, page):
        return {"items": studio.page(sid, page)}

    def on_load(saved_sid):
        sid = studio.open_session(saved_sid)
        _, grid_, counts_, info, _ = turn(sid, 0, 0)
        return (sid, sid, 0, grid_, counts_, info, studio.suggest_method(sid)[1],
                gr.Dropdown(choices=["base model"] + available_adapters(studio, sid)))

    def on_restore(sid, saved_page):
        """After a reload, the page the browser was on (kept in its storage), not page 1."""
        if not saved_page:
            return (gr.skip(),) * 5
        return turn(sid, int(saved_page), 0)

    def on_click(sid, page, evt: gr.EventData):
        data = evt._data or {}
        try:
            if "box" in data or "at" in data:  # a box: a drag, shift+click, b (next corner) or Escape (clear)
                studio.set_box(sid, int(data["item"]), data.get("box"), data.get("at"))
            else:
                studio.click(sid, int(data["item"]))
        except (KeyError, TypeError, ValueError):  # a hand-made request: no item, or not a number
            raise gr.Error("that click could not be read; reload the page") from None
        except CensorError as e:  # e.g. a session forgotten before its first label (a restart)
            raise gr.Error(f"{e}; reload the page") from None
        return grid_value(sid, page), studio.counts_text(sid), studio.suggest_method(sid)[1]

    def on_key(sid, page, evt: gr.EventData):
        data = evt._data or {}
        if data.get("action") == "undo":
            return on_undo(sid, page)
        return turn(sid, page, int(data.get("step", 1)))

    def on_undo(sid, page):
        try:
            undone = studio.undo(sid)
        except CensorError as e:
            raise gr.Error(f"{e}; reload the page") from None
        if not undone:
            gr.Info("nothing to undo")
        return turn(sid, page, 0)

    def on_mark_page(how):
        def mark(sid, page):
            try:
                studio.mark_page(sid, page, how)
            except CensorError as e:
                raise gr.Error(f"{e}; reload the page") from None
            return turn(sid, page, 0)
        return mark

    def turn(sid, page, step):
        total = studio.store.counts(sid).total
        page = int(np.clip(page + step, 0, max(0, (total - 1) // PAGE_SIZE)))
        # the page twice: the session's state, and the browser's storage (a reload comes back to it)
        return (page, grid_value(sid, page), studio.counts_text(sid),
                f"page {page + 1} of {max(1, -(-total // PAGE_SIZE))}", page)

    def on_train(sid, method, kind, members, iterations, alpha, request: gr.Request, progress=gr.Progress()):
        try:
            with job(request, progress, "training reward") as tick:
                info = studio.train(sid, method, kind, members, iterations, alpha, progress=tick)
        except JobCancelled as e:
            return f"⏹ {e}", gr.skip()
        except CensorError as e:
            raise gr.Error(str(e))
        # a reward of a local mark ticks strict (auto: repaint); any other leaves the person's choice as it was
        return training_summary(info), (True if info.get("strict_default") else gr.skip())

    def on_censor(sid, guidance, weight, backward, recurrence, steps, seed, count, feature, source,
                  strict=False, strict_p=0.0, auto=False, strict_mode="auto", request: gr.Request = None,
                  progress=gr.Progress()):
        try:
            with job(request, progress, "sampling") as tick:
                tuned = None if source == "base model" else (source, adapted_model(studio, sid, source))
                r = studio.censored_gallery(sid, guidance, weight, backward, recurrence, steps, int(seed), int(count),
                                            None if feature == "(none)" else feature, progress=tick, tuned=tuned,
                                            strict=bool(strict), strict_p=float(strict_p) if strict_p else None,
                                            auto=bool(auto), strict_mode=strict_mode)
        except JobCancelled as e:
            return gr.skip(), gr.skip(), f"⏹ {e}", gr.skip()
        except CensorError as e:
            raise gr.Error(str(e))
        text = gallery_readout(r, source, tuned is not None, None if feature == "(none)" else feature)
        note = adapter_steps_note(studio, sid, source, steps) if tuned is not None else None
        text = f"{text}\n\n⚠ {note}" if note else text
        return display(r["baseline"]), display(r["censored"]), text, r

    def on_cost(sid, guidance, backward, recurrence, steps, strict, strict_mode="auto"):
        try:
            return studio.cost_text(sid, guidance, backward, recurrence, steps, bool(strict), strict_mode)
        except (CensorError, TypeError, ValueError):  # a half-typed number: say nothing until it is one
            return gr.skip()

    def on_compare(sid, feature, methods, budget, seeds_, n_, request: gr.Request, progress=gr.Progress()):
        try:
            with job(request, progress, "fine-tuning and judging") as tick:
                r = run_comparison(studio, sid, feature, methods, int(budget), int(seeds_), int(n_), progress=tick)
        except JobCancelled as e:
            return f"⏹ {e}", gr.skip(), gr.skip(), gr.skip(), gr.skip()
        except CensorError as e:
            raise gr.Error(str(e))
        note = (f"\n\nFine-tuned adapters saved in this session: {', '.join(r['adapters'])}. Pick one as the "
                "model in the Censor tab." if r["adapters"] else "")
        curve = gr.Image(value=str(r["curve"]) if r["curve"] else None, visible=r["curve"] is not None)
        return (r["table"] + note, str(r["plot"]), str(r["grid"]), curve,
                gr.Dropdown(choices=["base model"] + r["adapters"]))

    def on_send(sid, last):
        if not last:
            raise gr.Error("render a censored gallery first")
        rnd = studio.send_to_labelling(sid, np.asarray(last["censored"], dtype=np.uint8), last["seeds"])
        page = studio.first_page_of_round(sid, rnd)
        return (f"Added {len(last['seeds'])} censored images as labelling round {rnd} (from page {page + 1}).",
                *turn(sid, page, 0))

    def on_informative(sid, on):
        studio.set_informative_first(sid, on)
        return turn(sid, studio.store.counts(sid).viewed // PAGE_SIZE if on else 0, 0)

    def on_share(sid, last):
        if not last:
            raise gr.Error("render a censored gallery first (Censor tab)")
        try:
            png, bundle = studio.export_gallery(sid, last)
        except CensorError as e:
            raise gr.Error(str(e))
        return [str(png), str(bundle)]

    def on_session_download(sid):
        return [str(studio.export_session(sid))]

    def on_bundle_upload(path, request: gr.Request, progress=gr.Progress()):
        try:  # the gate first: the validator reserved this job's place, and only the job gives it back
            with job(request, progress, "reproducing") as tick:
                if not path:
                    return gr.skip(), gr.skip()
                r = studio.import_gallery(path, progress=tick)
        except JobCancelled as e:
            return gr.skip(), f"⏹ {e}"
        except CensorError as e:
            raise gr.Error(str(e))
        return display(r["censored"]), studio.sharing.import_text(r)

    def on_session_upload(path):
        if not path:
            return (gr.skip(),) * 8
        try:
            new_sid = studio.import_session(path)
        except CensorError as e:
            raise gr.Error(str(e))
        turned = turn(new_sid, 0, 0)
        return new_sid, new_sid, *turned, f"Imported as a new session ({turned[2]})."

    def on_permalink(request: gr.Request):
        token = request.query_params.get("bundle") if request else None
        if not token:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            g = studio.open_permalink(token)
        except CensorError as e:
            return gr.skip(), f"⚠ {inert(e)}", gr.Tabs(selected="share")
        return display(g["censored"]), studio.sharing.permalink_text(token, g), gr.Tabs(selected="share")

    def generate(n, steps_, seed_, request: gr.Request, progress=gr.Progress()):
        try:
            with job(request, progress, "sampling") as tick:
                return studio.fresh_gallery(int(n), int(steps_), int(seed_), progress=tick)
        except JobCancelled as e:
            gr.Info(str(e))
            return gr.skip()
        except CensorError as e:
            raise gr.Error(str(e))

    def on_cancel(request: gr.Request):
        """Stops this browser's running job at its next progress tick (within a second or two)."""
        if not gate.cancel(request.session_hash):
            gr.Info("nothing is running")

    def on_unload(request: gr.Request):
        """A closed (or reloaded) tab stops its job: nobody is left to see the result."""
        gate.cancel(request.session_hash)

    def heavy(button, cancel, fn, inputs, outputs, **kw):
        """A long job: its button greys out and its Cancel shows while it runs (whatever the outcome, they
        come back after); Cancel stops the server's work, not only the page's wait."""
        def busy():
            return gr.Button(interactive=False), gr.Button(visible=True)

        def idle():
            return gr.Button(interactive=True), gr.Button(visible=False)
        ev = button.click(busy, None, [button, cancel], api_name=False, show_progress="hidden")
        run = ev.then(fn, inputs, outputs, validator=one_job_each, show_progress="full", **kw)
        run.then(idle, None, [button, cancel], api_name=False, show_progress="hidden")
        cancel.click(on_cancel, None, None, api_name=False, show_progress="hidden")
        return run

    with gr.Blocks(title="Censoring studio", delete_cache=DELETE_CACHE) as demo:
        # a key kept across restarts, so a restarted server can still read the id each browser stored
        saved_sid = gr.BrowserState(None, storage_key="censor-session", secret=browser_secret(studio.data_dir))
        saved_page = gr.BrowserState(0, storage_key="censor-page")
        sid = gr.State(None)
        page = gr.State(0)
        last = gr.State(None)
        gr.Markdown("# Censoring studio\nLabel a few generated images, train a reward in seconds, "
                    "and sample without what you marked.", elem_id="studio-title")
        with gr.Tabs() as tabs:
            with gr.Tab("Label", id="label"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=330):
                        counts = gr.Markdown(elem_id="counts")
                        grid = gr.HTML({"items": []}, html_template=GRID_TEMPLATE, css_template=GRID_CSS,
                                       js_on_load=GRID_JS, elem_id="label-grid")
                        with gr.Row():
                            prev_btn = gr.Button("◀ previous", size="sm", min_width=80, elem_id="prev-page")
                            page_info = gr.Markdown("page 1", elem_id="page-info")
                            next_btn = gr.Button("next ▶", size="sm", min_width=80, elem_id="next-page")
                    with gr.Column(scale=2, min_width=300):
                        gr.Markdown(IMPLICIT, elem_id="label-note")
                        with gr.Row():
                            undo_btn = gr.Button("↶ Undo (u)", size="sm", elem_id="undo-btn")
                            page_malign_btn = gr.Button("Mark page malign", size="sm", elem_id="page-malign")
                            page_out_btn = gr.Button("Leave page out", size="sm", elem_id="page-out")
                        gr.Markdown(HELP)
                        informative = gr.Checkbox(False, label="show most informative first",
                                                  elem_id="informative-first",
                                                  info="likely-malign, uncertain, disputed and not-yet-covered "
                                                       "images first")
            with gr.Tab("Train", id="train"):
                suggestion = gr.Markdown()
                method = gr.Radio(["ensemble", "imitation", "single"], value=DEFAULT_REWARD.method, label="method")
                kind = gr.Dropdown(list(REWARD_KINDS), value=DEFAULT_REWARD.kind, label="reward",
                                   info="local-patch sees small marks (watermarks, logos, text) and learns from "
                                        "boxes; the others whole-image features (kinds of object)")
                with gr.Row():
                    members = gr.Slider(*LIMITS["members"], value=DEFAULT_REWARD.members, step=1,
                                        label="ensemble size K", elem_id="members")
                    iterations = gr.Slider(*LIMITS["iterations"], value=DEFAULT_REWARD.iterations, step=10,
                                           label="iterations", elem_id="iterations")
                    alpha = gr.Slider(*LIMITS["alpha"], value=DEFAULT_REWARD.alpha, step=0.01,
                                      label="α (benign class weight)")
                with gr.Row():
                    train_btn = gr.Button("Train reward", variant="primary", elem_id="train-btn")
                    train_cancel = gr.Button("Cancel", variant="stop", visible=False, elem_id="train-cancel")
                train_out = gr.Markdown(elem_id="train-result")
            with gr.Tab("Censor", id="censor") as censor_tab:
                with gr.Row():
                    guidance = gr.Radio(["time", "universal"], value=DEFAULT_GUIDANCE.kind, label="guidance")
                    auto = gr.Checkbox(True, label="automatic strength", elem_id="censor-auto",
                                       info="tries ω on a small probe: the default, doubled while the reward "
                                            "still doubts the probe and it does not drift")
                    weight = gr.Slider(*LIMITS["weight"], value=DEFAULT_GUIDANCE.weight, step=0.1,
                                       label="weight ω (used when automatic strength is off)")
                    backward = gr.Slider(*LIMITS["backward"], value=DEFAULT_GUIDANCE.backward_steps, step=1,
                                         label="backward steps", elem_id="censor-backward",
                                         info="extra steps on the predicted clean image: a stronger push, "
                                              "at a cost (shown below)")
                    recurrence = gr.Slider(*LIMITS["recurrence"], value=DEFAULT_GUIDANCE.recurrence, step=1,
                                           label="recurrence", elem_id="censor-recurrence",
                                           info="re-noise and repeat each step: guidance corrects itself")
                with gr.Row():
                    steps = gr.Slider(*LIMITS["steps"], value=STEPS, step=1, label="steps", elem_id="censor-steps")
                    seed = gr.Number(0, precision=0, label="seed")
                    count = gr.Slider(*LIMITS["count"], value=COUNT, step=1, label="images", elem_id="censor-count")
                    feature = gr.Dropdown(features, value="(none)", label="oracle feature (if known)")
                    source = gr.Dropdown(["base model"], value="base model", label="model for the censored side",
                                         elem_id="censor-model")
                with gr.Row():
                    strict = gr.Checkbox(False, label="strict: also act on what the reward still doubts",
                                         elem_id="censor-strict",
                                         info="after guidance, drop (or repaint, see strict mode) images the reward "
                                              "calls malign")
                    strict_p = gr.Slider(*STRICT_P_RANGE, value=0.0, step=0.01, elem_id="censor-strict-p",
                                         label="strict threshold P(benign) (0 = automatic: 99% held-out malign recall)")
                    strict_mode = gr.Radio(list(STRICT_MODES), value=STRICT_MODES[0], label="strict mode",
                                           elem_id="censor-strict-mode",
                                           info="reject: drop a doubted image and draw another; repaint: redraw only "
                                                "where the reward points (small marks: a local-patch reward); "
                                                "auto: repaint with a local-patch reward, else reject")
                cost = gr.Markdown(elem_id="censor-cost")
                with gr.Row():
                    censor_btn = gr.Button("Render baseline and censored", variant="primary", elem_id="censor-btn")
                    censor_cancel = gr.Button("Cancel", variant="stop", visible=False, elem_id="censor-cancel")
                censor_out = gr.Markdown(elem_id="censor-result")
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=300):
                        base_gallery = gr.Gallery(label="baseline (same seeds)", columns=4, height="auto",
                                                  elem_id="baseline")
                    with gr.Column(min_width=300):
                        cens_gallery = gr.Gallery(label="censored", columns=4, height="auto", elem_id="censored")
                send_btn = gr.Button("Label this gallery (next imitation round)")
                send_out = gr.Markdown()
            with gr.Tab("Share", id="share"):
                gr.Markdown("Share the last censored gallery as a PNG grid or as a bundle that reproduces it "
                            "(images, manifest with every setting and seed, the reward weights). Sessions (labels and "
                            "reward) download and upload as zips of safetensors + JSON.")
                with gr.Row():
                    share_btn = gr.Button("Download last gallery", variant="primary", elem_id="share-btn")
                    session_btn = gr.Button("Download session")
                share_files = gr.File(label="downloads", file_count="multiple", elem_id="downloads")
                with gr.Row():
                    bundle_in = gr.File(label="import a gallery bundle (.zip)", file_types=[".zip"], elem_id="bundle-in")
                    session_in = gr.File(label="import a session (.zip)", file_types=[".zip"], elem_id="session-in")
                share_out = gr.Markdown(elem_id="share-result")
                shared_gallery = gr.Gallery(label="shared gallery", columns=4, height="auto", elem_id="shared")
            with gr.Tab("RLHF", id="rlhf") as rlhf_tab:
                gr.Markdown("Fine-tuning against guidance on the same labels. A simulated labeller (the oracle's "
                            "verdict on the chosen feature) labels for every method, so the run is a fair, repeatable "
                            "comparison: censored sampling, RLHF (reward model + DDPO policy gradients, every weight, with a KL "
                            "pull to the original model), D3PO (per-step DPO, no reward model), D3PO + censored sampling "
                            "and censor-then-distil (the model fine-tuned to take the censored sampler's steps, then sampled unguided). "
                            "Reduced steps: a few minutes on a CPU. Each method ends with a one-line verdict: what it "
                            "removed, what it did to the other images (tv, recall), what it cost. Afterwards, the "
                            "fine-tuned models can draw the Censor tab's gallery.")
                with gr.Row():
                    cmp_feature = gr.Dropdown([f for f in features if f != "(none)"], value="bags", label="feature")
                    cmp_methods = gr.CheckboxGroup(list(COMPARE_METHODS), value=list(COMPARE_METHODS), label="methods",
                                                   elem_id="compare-methods")
                with gr.Row():
                    cmp_budget = gr.Slider(*COMPARE_LIMITS["budget"], value=COMPARE_DEFAULTS["budget"], step=7,
                                           label="labels per method", elem_id="compare-budget")
                    cmp_seeds = gr.Slider(*COMPARE_LIMITS["seeds"], value=COMPARE_DEFAULTS["seeds"], step=1,
                                          label="labelling seeds")
                    cmp_n = gr.Slider(*COMPARE_LIMITS["n"], value=COMPARE_DEFAULTS["n"], step=10,
                                      label="gallery images per method", elem_id="compare-n")
                with gr.Row():
                    cmp_btn = gr.Button("Run the comparison", variant="primary", elem_id="compare-btn")
                    cmp_cancel = gr.Button("Cancel", variant="stop", visible=False, elem_id="compare-cancel")
                cmp_pairs = gr.Markdown(elem_id="compare-pairs")
                cmp_table = gr.Markdown(elem_id="compare-result")
                with gr.Row(equal_height=False):
                    cmp_plot = gr.Image(label="malign % against labels spent", type="filepath", elem_id="compare-plot")
                    cmp_grid = gr.Image(label="the galleries: two rows per method, top to bottom as in the table; "
                                              "malign framed red", type="filepath", elem_id="compare-grid")
                cmp_curve = gr.Image(label="RLHF against CPU minutes with the CLI's defaults (published: "
                                           "python -m rlhf curve, 2-core CPU): malign % and tv", type="filepath",
                                     visible=False, elem_id="compare-curve")
            with gr.Tab("Samples", id="samples"):
                with gr.Row():
                    n = gr.Slider(*LIMITS["count"], value=COUNT, step=1, label="images")
                    sample_steps = gr.Slider(*LIMITS["steps"], value=STEPS, step=1, label="DDIM steps")
                    sample_seed = gr.Number(value=0, precision=0, label="seed")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    go_cancel = gr.Button("Cancel", variant="stop", visible=False, elem_id="generate-cancel")
                gallery = gr.Gallery(label="samples", columns=8, height="auto", elem_id="gallery")

        paged = [page, grid, counts, page_info, saved_page]  # every event that turns or redraws the grid's page
        # not the stored page: on_restore reads it next
        demo.load(on_load, inputs=saved_sid, outputs=[saved_sid, sid, page, grid, counts, page_info, suggestion, source]
                  ).then(studio.informative_first, inputs=sid, outputs=informative
                  ).then(studio.warm_up, api_name=False, show_progress="hidden"  # the default baseline, while one labels
                  ).then(on_restore, inputs=[sid, saved_page], outputs=paged, api_name=False)
        informative.input(on_informative, inputs=[sid, informative], outputs=paged)
        # every press counts: the default trigger_mode="once" drops clicks made while one is in flight
        grid.click(on_click, inputs=[sid, page], outputs=[grid, counts, suggestion], api_name=False,
                   trigger_mode="multiple")
        grid.submit(on_key, inputs=[sid, page], outputs=paged, api_name=False, trigger_mode="multiple")
        next_btn.click(lambda s, p: turn(s, p, 1), inputs=[sid, page], outputs=paged)
        prev_btn.click(lambda s, p: turn(s, p, -1), inputs=[sid, page], outputs=paged)
        undo_btn.click(on_undo, inputs=[sid, page], outputs=paged, api_name=False)
        page_malign_btn.click(on_mark_page("malign"), inputs=[sid, page], outputs=paged, api_name=False)
        page_out_btn.click(on_mark_page("leave out"), inputs=[sid, page], outputs=paged, api_name=False)
        # heavy jobs: each its own queue slot (labelling clicks never wait behind them), one per browser
        heavy(train_btn, train_cancel, on_train, [sid, method, kind, members, iterations, alpha], [train_out, strict])
        heavy(censor_btn, censor_cancel, on_censor, [sid, guidance, weight, backward, recurrence, steps, seed, count,
                                                     feature, source, strict, strict_p, auto, strict_mode],
              [base_gallery, cens_gallery, censor_out, last])
        cost_inputs = [sid, guidance, backward, recurrence, steps, strict, strict_mode]
        for c in cost_inputs:  # the cost of a setting shows before the click
            c.change(on_cost, inputs=cost_inputs, outputs=cost, api_name=False, show_progress="hidden")
        censor_tab.select(on_cost, inputs=cost_inputs, outputs=cost, api_name=False, show_progress="hidden")
        # its own queue slot: a comparison takes minutes and must not hold up labelling or galleries
        heavy(cmp_btn, cmp_cancel, on_compare, [sid, cmp_feature, cmp_methods, cmp_budget, cmp_seeds, cmp_n],
              [cmp_table, cmp_plot, cmp_grid, cmp_curve, source], concurrency_id="compare", concurrency_limit=1)
        rlhf_tab.select(lambda s: preference_readout(studio, s), inputs=sid, outputs=cmp_pairs, api_name=False,
                        show_progress="hidden")
        send_btn.click(on_send, inputs=[sid, last], outputs=[send_out, *paged])
        heavy(go, go_cancel, generate, [n, sample_steps, sample_seed], gallery, api_name="generate")
        share_btn.click(on_share, inputs=[sid, last], outputs=share_files)
        session_btn.click(on_session_download, inputs=sid, outputs=share_files)
        bundle_in.upload(on_bundle_upload, inputs=bundle_in, outputs=[shared_gallery, share_out],
                         validator=one_job_each)
        session_in.upload(on_session_upload, inputs=session_in,
                          outputs=[saved_sid, sid, *paged, share_out]
                          ).then(studio.informative_first, inputs=sid, outputs=informative)
        demo.load(on_permalink, inputs=None, outputs=[shared_gallery, share_out, tabs])
        demo.unload(on_unload)
    return demo.queue(**QUEUE)


demo = build_app()  # module level, as Hugging Face Spaces and `gradio app.py` expect; nothing loads until used

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), max_file_size=MAX_UPLOAD, **LAUNCH)
