// The API's documentation: Swagger UI over /openapi.json, with the same
// options as FastAPI's own /docs page (a file of its own, so that the
// page's Content-Security-Policy needs no inline script).
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
