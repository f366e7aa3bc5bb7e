"""The chat page at / in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium).

Two kinds of test: the page against a real server and the embedded model (streaming, stop, regenerate, edit,
conversations kept across reloads, the server's states), and the page's Markdown renderer, a pure function
(`window.aipcRender(text)` -> a detached element), fed hostile and tricky text directly: no real model can be
made to say exactly that. Stored conversations (localStorage) go through the same rendering as a streamed answer,
so they carry such text end to end.

Skipped, with the reason printed, where Chromium or the playwright package is missing; `scripts/setup.sh dev`
installs both. Playwright's own browser download is never used.
"""
