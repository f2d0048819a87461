/* minimoe book: two fixes to the theme's behaviour, loaded on every page (book/_ext/minimoe_book.py).
 *
 * 1. The sidebar buttons. pydata-sphinx-theme 0.17 renders a "site navigation" button of its own in the page
 *    header besides sphinx-book-theme's, and both themes attach their click handlers to the first
 *    `.primary-toggle` / `.secondary-toggle` in the page only (pydata-sphinx-theme issue #2451,
 *    sphinx-book-theme issue #988). The button a reader sees gets no handler: on a phone or tablet neither the
 *    site menu nor "on this page" opens, and on a wide screen the menu button does not hide the sidebar. Here
 *    one handler serves every such button: on a wide screen (>= 992 px, where the primary sidebar sits beside
 *    the page) the primary button shows or hides it, as sphinx-book-theme intends; otherwise a button opens its
 *    sidebar as the theme's modal dialog.
 * 2. Figures. A figure wider than the column is scaled down to fit it; a click opens it at full size.
 */
(function () {
  "use strict";

  function ready(callback) {
    if (document.readyState !== "loading") callback();
    else document.addEventListener("DOMContentLoaded", callback);
  }

  // Move the children and the classes of `from` into `to` (what the theme does to fill and empty its dialogs).
  function moveInto(from, to) {
    Array.from(from.childNodes).forEach((node) => to.appendChild(node));
    Array.from(from.classList).forEach((name) => {
      from.classList.remove(name);
      to.classList.add(name);
    });
  }

  const SIDEBARS = {
    primary: { sidebar: "pst-primary-sidebar", dialog: "pst-primary-sidebar-modal" },
    secondary: { sidebar: "pst-secondary-sidebar", dialog: "pst-secondary-sidebar-modal" },
  };

  function openAsDialog(kind) {
    const sidebar = document.getElementById(SIDEBARS[kind].sidebar);
    const dialog = document.getElementById(SIDEBARS[kind].dialog);
    if (!sidebar || !dialog || dialog.open) return;
    const opener = document.activeElement;
    moveInto(sidebar, dialog);
    dialog.showModal();
    dialog.addEventListener(
      "close",
      () => {
        moveInto(dialog, sidebar); // a no-op when the theme's own close handler already moved them back
        if (opener && opener.focus) opener.focus();
      },
      { once: true },
    );
  }

  function toggle(event) {
    const button = event.target.closest && event.target.closest(".primary-toggle, .secondary-toggle");
    if (!button) return;
    event.preventDefault();
    event.stopPropagation();
    event.stopImmediatePropagation();
    button.blur();
    const kind = button.classList.contains("primary-toggle") ? "primary" : "secondary";
    if (kind === "primary" && window.matchMedia("(min-width: 992px)").matches) {
      const sidebar = document.getElementById(SIDEBARS.primary.sidebar);
      if (sidebar) sidebar.classList.toggle("pst-sidebar-hidden");
      return;
    }
    openAsDialog(kind);
  }

  // Capturing on the document runs before any handler on the buttons themselves, so the themes' handlers
  // (bound to other, hidden buttons) never act twice.
  document.addEventListener("click", toggle, true);

  ready(() => {
    for (const kind of Object.keys(SIDEBARS)) {
      const dialog = document.getElementById(SIDEBARS[kind].dialog);
      if (!dialog) continue;
      // A click on the backdrop (outside the dialog's box) closes it.
      dialog.addEventListener("click", (event) => {
        if (event.target !== dialog) return;
        const box = dialog.getBoundingClientRect();
        const inside = event.clientX >= box.left && event.clientX <= box.right &&
          event.clientY >= box.top && event.clientY <= box.bottom;
        if (!inside) dialog.close();
      });
    }

    for (const img of document.querySelectorAll(".bd-article .cell_output img")) {
      if (img.closest("a")) continue;
      const link = document.createElement("a");
      link.href = img.getAttribute("src");
      link.className = "minimoe-figure-link";
      link.title = "Open the figure at full size";
      img.replaceWith(link);
      link.appendChild(img);
    }
  });
})();
