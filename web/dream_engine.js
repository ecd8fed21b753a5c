// Dream Engine: show on the Interleaved Conditioning node what the model saw after each run
// (the node's UI output "text": the LMM inputs with compact image placeholders, each image's
// encoded size, tokens and r, and the token counts). The text box is read-only and never
// saved into the workflow.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODE = "DreamEngineInterleavedConditioning";
const WIDGET = "dream_engine_seen";

app.registerExtension({
  name: "DreamEngine.WhatTheModelSaw",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const text = (output?.text ?? []).join("\n");
      let w = this.widgets?.find((x) => x.name === WIDGET);
      if (!w) {
        w = ComfyWidgets.STRING(this, WIDGET, ["STRING", { multiline: true }], app).widget;
        w.serialize = false;
        if (w.inputEl) {
          w.inputEl.readOnly = true;
          w.inputEl.style.opacity = 0.85;
        }
        this.setSize([Math.max(this.size[0], 560), Math.max(this.size[1], this.computeSize()[1] + 200)]);
      }
      w.value = text;
      app.graph?.setDirtyCanvas(true, true);
    };
  },
});
