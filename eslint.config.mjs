// Lints the dashboard's browser code (npm run lint; make lint runs it).
import js from "@eslint/js";
import globals from "globals";

export default [
  js.configs.recommended,
  {
    files: ["trainflow/app/dashboard_site/**/*.js"],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "module",
      globals: { ...globals.browser },
    },
    rules: {
      eqeqeq: "error",
      "no-unused-vars": "error",
      "prefer-const": "error",
      "no-var": "error",
      curly: "error",
    },
  },
];
