// Loaded between require.js and the ipywidgets HTML manager on pages with widgets (nb_ipywidgets_js in _config.yml).
(function () {
  "use strict";
  var here = document.currentScript.src;
  var staticRoot = here.slice(0, here.lastIndexOf("/minimoe/") + 1);

  // The HTML manager takes the folder of its fonts from the URL require.js gives its AMD module; without this it
  // looks for them under the page's own folder. Point the module at the vendored copy in _static/vendor.
  window.require.config({
    paths: {"@jupyter-widgets/html-manager/dist": staticRoot + "vendor/html-manager/dist"},
  });

  // @jupyter-widgets/base typesets widget labels with MathJax 2's MathJax.Hub.Queue; the book loads MathJax 3.
  // Give whichever object window.MathJax holds (the configuration, then MathJax itself) a Hub.Queue that calls
  // MathJax 3's typesetPromise once MathJax has started.
  function typeset(job) {
    var element = job && job[2];
    var mathjax = window.MathJax;
    var ready = mathjax.startup && mathjax.startup.promise ? mathjax.startup.promise : Promise.resolve();
    return ready.then(function () {
      return mathjax.typesetPromise ? mathjax.typesetPromise(element ? [element] : undefined) : undefined;
    });
  }
  function withHub(mathjax) {
    if (mathjax && typeof mathjax === "object" && !mathjax.Hub) {
      Object.defineProperty(mathjax, "Hub", {value: {Queue: typeset}, enumerable: false});
    }
    return mathjax;
  }
  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); },
  });
})();
