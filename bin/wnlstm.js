#!/usr/bin/env node
'use strict';
process.exitCode = require('../dist/lm/cli').main();
