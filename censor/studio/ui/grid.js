// The label grid's clicks and keys. Click = next state. Keys (while the Label tab is visible and no
// text box has focus): arrows move, space / m / enter cycle the focused image, u undoes the last
// mark, n / p go to the next / previous page. The focused image is remembered across re-renders
// (every mark re-renders the grid), so the ring stays where the person is.
// Boxes (region feedback, optional): a mouse drag across an image sends the box's pixel edges; shift+click
// a pixel for a default box there; b boxes the focused image and moves its box through the preset
// positions; Escape takes the box away. The server owns the geometry (censor/core/regions.py).
let focus = 0;
let drag = null, dragEnd = 0;  // the drag under way; when the last one ended (its click is not a mark)
const cells = () => Array.from(element.querySelectorAll('.cell'));
const paint = () => {
  const cs = cells();
  if (focus >= cs.length) focus = Math.max(0, cs.length - 1);
  // touch a class only when it is wrong: the observer below sees class changes, and a no-op makes none
  cs.forEach((c, i) => { if (c.classList.contains('focused') !== (i === focus)) c.classList.toggle('focused'); });
};
// a re-render may replace the cells or only rewrite their class attribute: repaint after either
new MutationObserver(paint).observe(element, {childList: true, subtree: true, attributes: true, attributeFilter: ['class']});
// the image pixel under a pointer, clamped to the image
const pixel = (c, e) => {
  const r = c.querySelector('img').getBoundingClientRect(), w = Number(c.dataset.w), h = Number(c.dataset.h);
  const at = (v, lo, size, n) => Math.min(n - 1, Math.max(0, Math.floor((v - lo) / size * n)));
  return [at(e.clientX, r.left, r.width, w), at(e.clientY, r.top, r.height, h)];
};
const span = (p, q) => [Math.min(p[0], q[0]), Math.min(p[1], q[1]), Math.max(p[0], q[0]) + 1, Math.max(p[1], q[1]) + 1];
element.addEventListener('pointerdown', (e) => {
  const c = e.target.closest('.cell');
  if (!c || e.button !== 0 || e.pointerType === 'touch') return;  // touch scrolls; boxes come from b there
  drag = {c, x: e.clientX, y: e.clientY, from: pixel(c, e), band: null};
});
document.addEventListener('pointermove', (e) => {
  if (!drag || (!drag.band && Math.hypot(e.clientX - drag.x, e.clientY - drag.y) < 6)) return;
  if (!drag.band) {
    drag.band = document.createElement('div');
    drag.band.className = 'region drawing';
    drag.c.appendChild(drag.band);
  }
  const [x0, y0, x1, y1] = span(drag.from, pixel(drag.c, e)), w = Number(drag.c.dataset.w), h = Number(drag.c.dataset.h);
  Object.assign(drag.band.style, {left: `${100 * x0 / w}%`, top: `${100 * y0 / h}%`,
                                  width: `${100 * (x1 - x0) / w}%`, height: `${100 * (y1 - y0) / h}%`});
});
document.addEventListener('pointerup', (e) => {
  const d = drag;
  drag = null;
  if (!d || !d.band) return;  // no drag: the click that follows is a mark
  dragEnd = performance.now();
  focus = cells().indexOf(d.c);
  paint();
  trigger('click', {item: Number(d.c.dataset.id), box: span(d.from, pixel(d.c, e))});
});
element.addEventListener('click', (e) => {
  const c = e.target.closest('.cell');
  if (!c || performance.now() - dragEnd < 400) return;
  focus = cells().indexOf(c);
  paint();
  if (e.shiftKey) trigger('click', {item: Number(c.dataset.id), at: pixel(c, e)});
  else trigger('click', {item: Number(c.dataset.id)});
});
document.addEventListener('keydown', (e) => {
  if (element.offsetParent === null || e.ctrlKey || e.metaKey || e.altKey) return;
  const tag = (document.activeElement && document.activeElement.tagName) || '';
  if (['INPUT', 'TEXTAREA', 'SELECT', 'BUTTON'].includes(tag) && !(tag === 'BUTTON' && e.key.length === 1 && e.key !== ' ')) return;
  const cs = cells();
  if (!cs.length) return;
  let handled = true;
  if (e.key === 'ArrowRight') focus = Math.min(cs.length - 1, focus + 1);
  else if (e.key === 'ArrowLeft') focus = Math.max(0, focus - 1);
  else if (e.key === 'ArrowDown') focus = Math.min(cs.length - 1, focus + 5);
  else if (e.key === 'ArrowUp') focus = Math.max(0, focus - 5);
  else if (e.key === ' ' || e.key === 'm' || e.key === 'Enter') trigger('click', {item: Number(cs[focus].dataset.id)});
  else if (e.key === 'u') trigger('submit', {action: 'undo'});
  else if (e.key === 'b') trigger('click', {item: Number(cs[focus].dataset.id), box: 'next'});
  else if (e.key === 'Escape' && cs[focus].querySelector('.region')) trigger('click', {item: Number(cs[focus].dataset.id), box: 'clear'});
  else if (e.key === 'n') { focus = 0; trigger('submit', {step: 1}); }
  else if (e.key === 'p') { focus = 0; trigger('submit', {step: -1}); }
  else handled = false;
  if (handled) { e.preventDefault(); paint(); }
});
paint();
