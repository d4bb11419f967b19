// DeiT Deployment Lab: the page's own behaviour (loaded in <head> by ui.launch_kwargs).
// On a narrow screen (a phone) the columns stack: the answer sits above the examples, and an example tapped far below
// fills it in out of sight. When the answer changes there, bring it into view.
(() => {
  const NARROW_PX = 700;
  const watch = () => {
    const timing = document.querySelector("#classify-timing");
    const answer = document.querySelector("#classify-answer");
    if (!timing || !answer) {
      setTimeout(watch, 300);
      return;
    }
    new MutationObserver(() => {
      const box = answer.getBoundingClientRect();
      const visible = box.top >= 0 && box.top < window.innerHeight * 0.6;
      if (window.innerWidth < NARROW_PX && timing.textContent.trim() && !visible) {
        answer.scrollIntoView({ behavior: "instant", block: "start" });
      }
    }).observe(timing, { childList: true, subtree: true, characterData: true });
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", watch);
  else watch();
})();
