"""The upload page served at GET /: pick or drop an image, see it and its top-k classes as bars; a toggle lays the
heatmap of the predicted class over it (POST /explain)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgtrain · __TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:760px;margin:2em auto;padding:0 1em;color:#222}
#drop{display:block;border:2px dashed #999;border-radius:8px;padding:2em;text-align:center;cursor:pointer}
#drop.over{background:#eef5ff;border-color:#36c}
#preview,#overlay{width:168px;image-rendering:pixelated;margin:1em 0;display:none}
.bar{display:flex;align-items:center;margin:.3em 0}.bar span{width:10em}
.bar div{background:#36c;height:1.1em;margin-right:.5em}#error{color:#b00}
</style></head><body>
<h1>__TITLE__</h1>
<p>Classes: __CLASSES__</p>
<label id="drop">Drop an image here, or click to pick one
<input id="file" type="file" accept="image/*" hidden></label>
<p><label><input id="why" type="checkbox"> show why: the heatmap of the evidence for the top class</label></p>
<img id="preview" alt="the uploaded image"><img id="overlay" alt="heatmap over the image">
<div id="result"></div><p id="error"></p>
<script>
const drop = document.getElementById('drop'), input = document.getElementById('file');
const preview = document.getElementById('preview'), result = document.getElementById('result');
const error = document.getElementById('error');
const why = document.getElementById('why'), overlay = document.getElementById('overlay');
let current = null, explained = null;
function show() {
  const heat = why.checked && explained === current;
  overlay.style.display = heat ? 'block' : 'none'; preview.style.display = current && !heat ? 'block' : 'none';
}
async function explain() {
  if (!current || explained === current) return show();
  const file = current, body = new FormData(); body.append('files', file);
  const r = await fetch('explain', {method: 'POST', body});
  const data = await r.json();
  if (file !== current) return;
  if (!r.ok) { error.textContent = data.detail || r.statusText; return; }
  overlay.onload = () => { explained = file; show(); };
  overlay.src = data.explanations[0].overlay;
}
why.addEventListener('change', () => why.checked ? explain() : show());
async function send(file) {
  current = file; explained = null;
  preview.src = URL.createObjectURL(file); show();
  result.textContent = 'predicting…'; error.textContent = '';
  const body = new FormData(); body.append('files', file);
  const r = await fetch('predict', {method: 'POST', body});
  const data = await r.json();
  result.textContent = '';
  if (!r.ok) { error.textContent = data.detail || r.statusText; return; }
  const top = data.predictions[0].top;
  const best = document.createElement('h2'); best.id = 'top1'; best.textContent = top[0].class;
  result.appendChild(best);
  for (const t of top) {
    const row = document.createElement('div'); row.className = 'bar';
    const name = document.createElement('span'); name.textContent = t.class;
    const bar = document.createElement('div'); bar.style.width = (t.probability * 300) + 'px';
    const p = document.createElement('em'); p.textContent = (100 * t.probability).toFixed(1) + ' %';
    row.append(name, bar, p); result.appendChild(row);
  }
  if (why.checked) explain();
}
input.addEventListener('change', () => input.files[0] && send(input.files[0]));
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => { e.preventDefault(); drop.classList.remove('over');
  if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); });
</script></body></html>"""
