// Headless Chromium through the whole login: the frontend's page, the real oidc-provider's
// login and consent pages, back to the frontend, then a question asked from the page by
// keyboard. Prints one JSON object ({"logged_in", "answer", "csp"}) and saves screenshots.
// Run with: PUPPETEER_MODULE=.cache/node/node_modules/puppeteer-core/lib/puppeteer/puppeteer-core.js \
//           node browser_login.mjs FRONTEND_URL SCREENSHOT_DIR
import { pathToFileURL } from 'node:url';
import { resolve, join } from 'node:path';
import { mkdirSync } from 'node:fs';

const [frontend, shots] = process.argv.slice(2);
const { default: puppeteer } = await import(pathToFileURL(resolve(process.env.PUPPETEER_MODULE)).href);
mkdirSync(shots, { recursive: true });

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
try {
  const page = await browser.newPage();
  const home = await page.goto(`${frontend}/`);
  const csp = home.headers()['content-security-policy'];
  await page.screenshot({ path: join(shots, '1-home.png') });
  await Promise.all([page.waitForNavigation(), page.click('a[href="/login"]')]);
  // oidc-provider's devInteractions login form.
  await page.type('input[name="login"]', 'alice');
  await page.type('input[name="password"]', 'any password');
  await page.screenshot({ path: join(shots, '2-provider-login.png') });
  await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  // Consent, then back to the frontend.
  if (await page.$('input[name="prompt"][value="consent"]')) {
    await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  }
  await page.waitForSelector('#question');
  const loggedIn = await page.$eval('main', (m) => m.textContent);
  await page.screenshot({ path: join(shots, '3-logged-in.png') });
  // By keyboard: type into the question, Tab to the Ask button, Enter.
  await page.focus('#question');
  await page.keyboard.type('what is the capital of France?');
  await page.keyboard.press('Tab');
  await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
  const answer = await page.$eval('#answer', (a) => a.textContent);
  await page.screenshot({ path: join(shots, '4-answer.png'), fullPage: true });
  console.log(JSON.stringify({ logged_in: loggedIn, answer, csp }));
} finally {
  await browser.close();
}
