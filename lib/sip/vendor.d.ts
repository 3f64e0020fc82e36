// Packages without type declarations. Only lib/sip/drachtio.ts imports them, and it narrows
// each to the shape it actually uses.
declare module 'drachtio-mw-registration-parser' {
  const middleware: unknown;
  export default middleware;
}
declare module 'sip-status' {
  const phrases: unknown;
  export default phrases;
}
