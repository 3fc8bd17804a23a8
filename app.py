"""The censoring studio (Gradio Blocks). UI wiring only: every method lives in the censor and rlhf packages.

Run ``python app.py`` and open http://127.0.0.1:7860. Data (labels, rewards) goes to
``$CENSOR_DATA_DIR`` (default ./studio_data; on a Space, point it at the persistent storage).
"""

from __future__ import annotations

import os

import gradio as gr
import numpy as np

from censor.core.errors import CensorError
from censor.core.settings import COUNT, DEFAULT_GUIDANCE, DEFAULT_REWARD, STEPS
from censor.diffusion.sources import options_from_env
from censor.eval.drift import DRIFT_MESSAGE
from censor.eval.features import load_features
from censor.studio.common import DELETE_CACHE, LIMITS, PAGE_SIZE, display, inert
from censor.studio.core import Studio
from censor.studio.galleries import STRICT_P_RANGE
from censor.studio.space import JobGate, browser_secret
from censor.studio.rlhf import COMPARE_DEFAULTS, COMPARE_LIMITS, adapted_model, available_adapters, run_comparison
from rlhf.compare import METHODS as COMPARE_METHODS

GRID_TEMPLATE = """
<div class="label-grid">
  {{#each value.items}}
  <div class="cell {{this.state}}" data-id="{{this.id}}" title="image {{this.id}}: {{this.state}}">
    <img src="{{this.src}}" alt="image {{this.id}}"/>
  </div>
  {{/each}}
</div>
"""
GRID_CSS = """
.label-grid { display: grid; grid-template-columns: repeat(5, 112px); gap: 8px; outline: none; }
.cell { width: 112px; height: 112px; border: 4px solid transparent; cursor: pointer; box-sizing: content-box; }
.cell img { width: 112px; height: 112px; image-rendering: pixelated; display: block; }
.cell.malign { border-color: #e02020; }
.cell.unsure { border-color: #e0a020; border-style: dashed; }
.cell.focused { outline: 3px solid #2060ff; outline-offset: 2px; }
"""
# Click = next state. Keys (while the Label tab is visible and no text box has focus): arrows move,
# space/m/enter cycles the focused image, n / p go to the next / previous page.
GRID_JS = """
let focus = 0;
const cells = () => Array.from(element.querySelectorAll('.cell'));
const paint = () => cells().forEach((c, i) => c.classList.toggle('focused', i === focus));
new MutationObserver(paint).observe(element, {childList: true, subtree: true});
element.addEventListener('click', (e) => {
  const c = e.target.closest('.cell');
  if (!c) return;
  focus = cells().indexOf(c);
  paint();
  trigger('click', {item: Number(c.dataset.id)});
});
document.addEventListener('keydown', (e) => {
  if (element.offsetParent === null) return;
  const tag = (document.activeElement && document.activeElement.tagName) || '';
  if (['INPUT', 'TEXTAREA', 'SELECT'].includes(tag)) return;
  const cs = cells();
  if (!cs.length) return;
  let handled = true;
  if (e.key === 'ArrowRight') focus = Math.min(cs.length - 1, focus + 1);
  else if (e.key === 'ArrowLeft') focus = Math.max(0, focus - 1);
  else if (e.key === 'ArrowDown') focus = Math.min(cs.length - 1, focus + 5);
  else if (e.key === 'ArrowUp') focus = Math.max(0, focus - 5);
  else if (e.key === ' ' || e.key === 'm' || e.key === 'Enter') trigger('click', {item: Number(cs[focus].dataset.id)});
  else if (e.key === 'n') { focus = 0; trigger('submit', {step: 1}); }
  else if (e.key === 'p') { focus = 0; trigger('submit', {step: -1}); }
  else handled = false;
  if (handled) { e.preventDefault(); paint(); }
});
paint();
"""
# The public Space's queue: one run at a time per event (the comparison has its own slot) and at most
# 32 waiting; beyond that Gradio refuses the request (HTTP 503) and the page says "This application is
# currently busy. Please try again." (see docs/reliability.md).
# api_open=False: no event may skip the queue (and its one-job-per-browser check) by a direct POST.
QUEUE = dict(default_concurrency_limit=1, max_size=32, api_open=False)
MAX_UPLOAD = "64mb"  # bundles and sessions are far smaller; Gradio refuses bigger uploads before they land
HELP = ("Click an image to mark it **malign** (red); click again for **unsure** (dashed, left out of training); "
        "a third click resets it to benign. Keyboard: arrows move, space or m marks, n / p change page. "
        "Every click is saved at once.")


def build_app(studio: Studio | None = None, gate: JobGate | None = None) -> gr.Blocks:
    """The studio's Blocks, its queue set to ``QUEUE``; ``studio`` defaults to the one ``$CENSOR_MODEL`` names,
    ``gate`` (one heavy job per browser, each under a time limit) to ``JobGate()``."""
    if studio is None:
        source, options = options_from_env(os.environ)  # CENSOR_MODEL, CENSOR_PROMPT, ... (censor/sources.py)
        studio = Studio(source, model_options=options, pool_dir=os.environ.get("CENSOR_POOL_DIR"))
    features = ["(none)"] + sorted(load_features())
    gate = gate or JobGate()

    def one_job_each(request: gr.Request, *inputs):  # the request first: Gradio injects it only there
        """Heavy events' validator: runs as Gradio queues the job, so a flood is refused at the door."""
        gate.reserve(request.session_hash)
        return [gr.validate(True, "") for _ in inputs]  # Gradio wants one verdict per input

    def grid_value(sid, page):
        return {"items": studio.page(sid, page)}

    def on_load(saved_sid):
        sid = studio.open_session(saved_sid)
        _, grid_, counts_, info = turn(sid, 0, 0)
        return (sid, sid, 0, grid_, counts_, info, studio.suggest_method(sid)[1],
                gr.Dropdown(choices=["base model"] + available_adapters(studio, sid)))

    def on_click(sid, page, evt: gr.EventData):
        try:
            studio.click(sid, int((evt._data or {})["item"]))
        except (KeyError, TypeError, ValueError):  # a hand-made request: no item, or not a number
            raise gr.Error("that click could not be read; reload the page") from None
        except CensorError as e:  # e.g. a session forgotten before its first label (a restart)
            raise gr.Error(f"{e}; reload the page") from None
        return grid_value(sid, page), studio.counts_text(sid), studio.suggest_method(sid)[1]

    def on_page(sid, page, evt: gr.EventData):
        step = int((evt._data or {}).get("step", 1))
        return turn(sid, page, step)

    def turn(sid, page, step):
        total = studio.store.counts(sid).total
        page = int(np.clip(page + step, 0, max(0, (total - 1) // PAGE_SIZE)))
        return page, grid_value(sid, page), studio.counts_text(sid), f"page {page + 1} of {max(1, -(-total // PAGE_SIZE))}"

    def on_train(sid, method, kind, members, iterations, alpha, request: gr.Request, progress=gr.Progress()):
        try:
            with gate.job(request.session_hash, lambda f: progress(f, desc="training reward")) as tick:
                info = studio.train(sid, method, kind, members, iterations, alpha, progress=tick)
        except CensorError as e:
            raise gr.Error(str(e))
        acc = info.get("held_out_accuracy")
        return (f"Trained a {info['kind']} reward ({info['members']} member(s), {info['labels']} labels: "
                f"{info['malign_labels']} malign) in {info['train_seconds']:.1f} s."
                + (f" Held-out balanced accuracy {100 * acc:.0f}% (mean of the malign and benign hit rates)."
                   if acc is not None else " (Too few labels for a held-out check.)"))

    def on_censor(sid, guidance, weight, backward, recurrence, steps, seed, count, feature, source,
                  strict=False, strict_p=0.0, auto=False, request: gr.Request = None, progress=gr.Progress()):
        try:
            with gate.job(request.session_hash, lambda f: progress(f, desc="sampling")) as tick:
                tuned = None if source == "base model" else (source, adapted_model(studio, sid, source))
                r = studio.censored_gallery(sid, guidance, weight, backward, recurrence, steps, int(seed), int(count),
                                            None if feature == "(none)" else feature, progress=tick, tuned=tuned,
                                            strict=bool(strict), strict_p=float(strict_p) if strict_p else None,
                                            auto=bool(auto))
        except CensorError as e:
            raise gr.Error(str(e))
        lines = [f"Censored side drawn from the {source}" + (" adapter." if tuned else ".")]
        if r.get("guidance_note"):
            lines.append(f"Guidance: {r['guidance_note']}.")
        if r["settings"].get("auto"):
            a = r["settings"]["auto"]
            lines.append(f"Automatic strength: ω = {a['weight']:g} ({a['reason']}).")
        lines.extend(drift_lines(r.get("drift")))
        if r.get("strict"):
            lines.append(f"Strict: {r['strict']['summary']}, {r['strict']['source']} threshold.")
        if r["reward_malign"]:
            lines.append(f"Reward's estimate of malign images: baseline {100 * r['reward_malign']['baseline']:.0f}% → "
                         f"censored {100 * r['reward_malign']['censored']:.0f}%.")
        if r["oracle"]:
            lines.append(f"Oracle ({feature}): baseline {r['oracle']['baseline']} → censored {r['oracle']['censored']}.")
        if r["fallbacks"]:
            lines.append(f"⚠ {r['fallbacks']} image-steps fell back to unguided (the weight is too large).")
        return display(r["baseline"]), display(r["censored"]), "\n\n".join(lines), r

    def drift_lines(drift):
        """The oracle-free fidelity figure and, when it is beyond chance, the plain warning."""
        if not drift:
            return []
        c, b = drift["censored"], drift["baseline"]
        out = [f"Fidelity (no oracle): drift of the censored gallery from the baseline reweighted by the reward "
               f"{c['tv']:.2f} (baseline itself {b['tv']:.2f}; chance alone reaches {c['chance']:.2f} with "
               f"{c['n']} images)."]
        if c["drifted"]:
            out.append("⚠ " + DRIFT_MESSAGE[0].upper() + DRIFT_MESSAGE[1:] + ".")
        return out

    def on_compare(sid, feature, methods, budget, seeds_, n_, request: gr.Request, progress=gr.Progress()):
        try:
            with gate.job(request.session_hash, lambda f: progress(f, desc="fine-tuning and judging")) as tick:
                r = run_comparison(studio, sid, feature, methods, int(budget), int(seeds_), int(n_), progress=tick)
        except CensorError as e:
            raise gr.Error(str(e))
        note = (f"\n\nFine-tuned adapters saved in this session: {', '.join(r['adapters'])}. Pick one as the "
                "model in the Censored gallery tab." if r["adapters"] else "")
        return r["table"] + note, str(r["plot"]), gr.Dropdown(choices=["base model"] + r["adapters"])

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
            raise gr.Error("render a censored gallery first (Censored gallery tab)")
        try:
            png, bundle = studio.export_gallery(sid, last)
        except CensorError as e:
            raise gr.Error(str(e))
        return [str(png), str(bundle)]

    def on_session_download(sid):
        return [str(studio.export_session(sid))]

    def on_bundle_upload(path, request: gr.Request, progress=gr.Progress()):
        try:  # the gate first: the validator reserved this job's place, and only the job gives it back
            with gate.job(request.session_hash, lambda f: progress(f, desc="reproducing")) as tick:
                if not path:
                    return gr.skip(), gr.skip()
                r = studio.import_gallery(path, progress=tick)
        except CensorError as e:
            raise gr.Error(str(e))
        return display(r["censored"]), studio.sharing.import_text(r)

    def on_session_upload(path):
        if not path:
            return (gr.skip(),) * 7
        try:
            new_sid = studio.import_session(path)
        except CensorError as e:
            raise gr.Error(str(e))
        page_, grid_, counts_, info = turn(new_sid, 0, 0)
        return new_sid, new_sid, page_, grid_, counts_, info, f"Imported as a new session ({counts_})."

    def on_permalink(request: gr.Request):
        token = request.query_params.get("bundle") if request else None
        if not token:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            g = studio.open_permalink(token)
        except CensorError as e:
            return gr.skip(), f"⚠ {inert(e)}", gr.Tabs(selected="share")
        return display(g["censored"]), studio.sharing.permalink_text(token, g), gr.Tabs(selected="share")

    with gr.Blocks(title="Censoring studio", delete_cache=DELETE_CACHE) as demo:
        # a key kept across restarts, so a restarted server can still read the id each browser stored
        saved_sid = gr.BrowserState(None, storage_key="censor-session", secret=browser_secret(studio.data_dir))
        sid = gr.State(None)
        page = gr.State(0)
        last = gr.State(None)
        gr.Markdown("# Censoring studio\nLabel a few generated images, train a reward in seconds, "
                    "and sample without what you marked.")
        with gr.Tabs() as tabs:
            with gr.Tab("1 · Label"):
                gr.Markdown(HELP)
                informative = gr.Checkbox(False, label="show most informative first", elem_id="informative-first",
                                          info="likely-malign, uncertain, disputed and not-yet-covered images first")
                counts = gr.Markdown(elem_id="counts")
                grid = gr.HTML({"items": []}, html_template=GRID_TEMPLATE, css_template=GRID_CSS, js_on_load=GRID_JS,
                               elem_id="label-grid")
                with gr.Row():
                    prev_btn = gr.Button("◀ previous page")
                    page_info = gr.Markdown("page 1")
                    next_btn = gr.Button("next page ▶")
            with gr.Tab("2 · Train"):
                suggestion = gr.Markdown()
                method = gr.Radio(["ensemble", "imitation", "single"], value=DEFAULT_REWARD.method, label="method")
                kind = gr.Dropdown(["ddpm-encoder", "half-unet", "resnet18"], value=DEFAULT_REWARD.kind, label="reward")
                with gr.Row():
                    members = gr.Slider(*LIMITS["members"], value=DEFAULT_REWARD.members, step=1,
                                        label="ensemble size K", elem_id="members")
                    iterations = gr.Slider(*LIMITS["iterations"], value=DEFAULT_REWARD.iterations, step=10,
                                           label="iterations", elem_id="iterations")
                    alpha = gr.Slider(*LIMITS["alpha"], value=DEFAULT_REWARD.alpha, step=0.01,
                                      label="α (benign class weight)")
                train_btn = gr.Button("Train reward", variant="primary", elem_id="train-btn")
                train_out = gr.Markdown(elem_id="train-result")
            with gr.Tab("3 · Censored gallery"):
                with gr.Row():
                    guidance = gr.Radio(["time", "universal"], value=DEFAULT_GUIDANCE.kind, label="guidance")
                    auto = gr.Checkbox(True, label="automatic strength", elem_id="censor-auto",
                                       info="tries ω on a small probe: the default, doubled while the reward "
                                            "still doubts the probe and it does not drift")
                    weight = gr.Slider(*LIMITS["weight"], value=DEFAULT_GUIDANCE.weight, step=0.1,
                                       label="weight ω (used when automatic strength is off)")
                    backward = gr.Slider(*LIMITS["backward"], value=DEFAULT_GUIDANCE.backward_steps, step=1,
                                         label="backward steps")
                    recurrence = gr.Slider(*LIMITS["recurrence"], value=DEFAULT_GUIDANCE.recurrence, step=1,
                                           label="recurrence")
                with gr.Row():
                    steps = gr.Slider(*LIMITS["steps"], value=STEPS, step=1, label="steps", elem_id="censor-steps")
                    seed = gr.Number(0, precision=0, label="seed")
                    count = gr.Slider(*LIMITS["count"], value=COUNT, step=1, label="images", elem_id="censor-count")
                    feature = gr.Dropdown(features, value="(none)", label="oracle feature (if known)")
                    source = gr.Dropdown(["base model"], value="base model", label="model for the censored side",
                                         elem_id="censor-model")
                with gr.Row():
                    strict = gr.Checkbox(False, label="strict: also reject what the reward still doubts",
                                         elem_id="censor-strict",
                                         info="after guidance, drop images the reward calls malign and draw more")
                    strict_p = gr.Slider(*STRICT_P_RANGE, value=0.0, step=0.01, elem_id="censor-strict-p",
                                         label="strict threshold P(benign) (0 = automatic: 99% held-out malign recall)")
                censor_btn = gr.Button("Render baseline and censored", variant="primary", elem_id="censor-btn")
                censor_out = gr.Markdown(elem_id="censor-result")
                with gr.Row():
                    base_gallery = gr.Gallery(label="baseline (same seeds)", columns=6, height="auto", elem_id="baseline")
                    cens_gallery = gr.Gallery(label="censored", columns=6, height="auto", elem_id="censored")
                send_btn = gr.Button("Label this gallery (next imitation round)")
                send_out = gr.Markdown()
            with gr.Tab("4 · Share", id="share") as share_tab:
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
                shared_gallery = gr.Gallery(label="shared gallery", columns=8, height="auto", elem_id="shared")
            with gr.Tab("5 · RLHF / D3PO"):
                gr.Markdown("Fine-tuning against guidance on the same labels. A simulated labeller (the oracle's "
                            "verdict on the chosen feature) labels for every method, so the run is a fair, repeatable "
                            "comparison: censored sampling, RLHF (reward model + DDPO policy gradients on LoRA), "
                            "D3PO (per-step DPO, no reward model) and D3PO + censored sampling. Reduced steps: a few "
                            "minutes on a CPU. Afterwards, the fine-tuned adapters can draw the Censored gallery.")
                with gr.Row():
                    cmp_feature = gr.Dropdown([f for f in features if f != "(none)"], value="bags", label="feature")
                    cmp_methods = gr.CheckboxGroup(list(COMPARE_METHODS), value=list(COMPARE_METHODS), label="methods")
                with gr.Row():
                    cmp_budget = gr.Slider(*COMPARE_LIMITS["budget"], value=COMPARE_DEFAULTS["budget"], step=7,
                                           label="labels per method", elem_id="compare-budget")
                    cmp_seeds = gr.Slider(*COMPARE_LIMITS["seeds"], value=COMPARE_DEFAULTS["seeds"], step=1,
                                          label="labelling seeds")
                    cmp_n = gr.Slider(*COMPARE_LIMITS["n"], value=COMPARE_DEFAULTS["n"], step=10,
                                      label="gallery images per method", elem_id="compare-n")
                with gr.Row():
                    cmp_btn = gr.Button("Run the comparison", variant="primary", elem_id="compare-btn")
                    cmp_cancel = gr.Button("Cancel", elem_id="compare-cancel")
                cmp_table = gr.Markdown(elem_id="compare-result")
                cmp_plot = gr.Image(label="malign % against labels spent", type="filepath", elem_id="compare-plot")
            with gr.Tab("Samples"):
                with gr.Row():
                    n = gr.Slider(*LIMITS["count"], value=COUNT, step=1, label="images")
                    sample_steps = gr.Slider(*LIMITS["steps"], value=STEPS, step=1, label="DDIM steps")
                    sample_seed = gr.Number(value=0, precision=0, label="seed")
                go = gr.Button("Generate")
                gallery = gr.Gallery(label="samples", columns=8, height="auto", elem_id="gallery")

        def generate(n, steps_, seed_, request: gr.Request, progress=gr.Progress()):
            try:
                with gate.job(request.session_hash, lambda f: progress(f, desc="sampling")) as tick:
                    return studio.fresh_gallery(int(n), int(steps_), int(seed_), progress=tick)
            except CensorError as e:
                raise gr.Error(str(e))

        demo.load(on_load, inputs=saved_sid, outputs=[saved_sid, sid, page, grid, counts, page_info, suggestion, source]
                  ).then(studio.informative_first, inputs=sid, outputs=informative)
        informative.input(on_informative, inputs=[sid, informative], outputs=[page, grid, counts, page_info])
        # every press counts: the default trigger_mode="once" drops clicks made while one is in flight
        grid.click(on_click, inputs=[sid, page], outputs=[grid, counts, suggestion], api_name=False,
                   trigger_mode="multiple")
        grid.submit(on_page, inputs=[sid, page], outputs=[page, grid, counts, page_info], api_name=False)
        next_btn.click(lambda s, p: turn(s, p, 1), inputs=[sid, page], outputs=[page, grid, counts, page_info])
        prev_btn.click(lambda s, p: turn(s, p, -1), inputs=[sid, page], outputs=[page, grid, counts, page_info])
        # heavy jobs: each its own queue slot (labelling clicks never wait behind them), one per browser
        train_btn.click(on_train, inputs=[sid, method, kind, members, iterations, alpha], outputs=train_out,
                        validator=one_job_each)
        censor_btn.click(on_censor, inputs=[sid, guidance, weight, backward, recurrence, steps, seed, count, feature,
                                            source, strict, strict_p, auto],
                         outputs=[base_gallery, cens_gallery, censor_out, last], validator=one_job_each)
        # its own queue slot: a comparison takes minutes and must not hold up labelling or galleries
        cmp_run = cmp_btn.click(on_compare, inputs=[sid, cmp_feature, cmp_methods, cmp_budget, cmp_seeds, cmp_n],
                                outputs=[cmp_table, cmp_plot, source], concurrency_id="compare", concurrency_limit=1,
                                validator=one_job_each)
        cmp_cancel.click(None, cancels=[cmp_run])
        send_btn.click(on_send, inputs=[sid, last], outputs=[send_out, page, grid, counts, page_info])
        go.click(generate, inputs=[n, sample_steps, sample_seed], outputs=gallery, api_name="generate",
                 validator=one_job_each)
        share_btn.click(on_share, inputs=[sid, last], outputs=share_files)
        session_btn.click(on_session_download, inputs=sid, outputs=share_files)
        bundle_in.upload(on_bundle_upload, inputs=bundle_in, outputs=[shared_gallery, share_out],
                         validator=one_job_each)
        session_in.upload(on_session_upload, inputs=session_in,
                          outputs=[saved_sid, sid, page, grid, counts, page_info, share_out]
                          ).then(studio.informative_first, inputs=sid, outputs=informative)
        demo.load(on_permalink, inputs=None, outputs=[shared_gallery, share_out, tabs])
    return demo.queue(**QUEUE)


demo = build_app()  # module level, as Hugging Face Spaces and `gradio app.py` expect; nothing loads until used

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), max_file_size=MAX_UPLOAD)
