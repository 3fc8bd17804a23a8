// The label grid's clicks and keys. Click = next state. Keys (while the Label tab is visible and no
// text box has focus): arrows move, space / m / enter cycle the focused image, u undoes the last
// mark, n / p go to the next / previous page. The focused image is remembered across re-renders
// (every mark re-renders the grid), so the ring stays where the person is.
let focus = 0;
const cells = () => Array.from(element.querySelectorAll('.cell'));
const paint = () => {
  const cs = cells();
  if (focus >= cs.length) focus = Math.max(0, cs.length - 1);
  // touch a class only when it is wrong: the observer below sees class changes, and a no-op makes none
  cs.forEach((c, i) => { if (c.classList.contains('focused') !== (i === focus)) c.classList.toggle('focused'); });
};
// a re-render may replace the cells or only rewrite their class attribute: repaint after either
new MutationObserver(paint).observe(element, {childList: true, subtree: true, attributes: true, attributeFilter: ['class']});
element.addEventListener('click', (e) => {
  const c = e.target.closest('.cell');
  if (!c) return;
  focus = cells().indexOf(c);
  paint();
  trigger('click', {item: Number(c.dataset.id)});
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
  else if (e.key === 'n') { focus = 0; trigger('submit', {step: 1}); }
  else if (e.key === 'p') { focus = 0; trigger('submit', {step: -1}); }
  else handled = false;
  if (handled) { e.preventDefault(); paint(); }
});
paint();
