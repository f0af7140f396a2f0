# Writes the source tree's git commit into a header, at build time (cmake -P), so that an
# incremental build after a commit stamps the new commit into the binary and its result files.
# The header is rewritten only when its text changes: an unchanged commit recompiles nothing.
#   cmake -DSOURCE_DIR=<repository> -DOUTPUT=<header> -P git_commit.cmake
execute_process(COMMAND git rev-parse --short=12 HEAD
                WORKING_DIRECTORY "${SOURCE_DIR}"
                OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE
                RESULT_VARIABLE commit_status
                ERROR_QUIET)
execute_process(COMMAND git status --porcelain --untracked-files=no
                WORKING_DIRECTORY "${SOURCE_DIR}"
                OUTPUT_VARIABLE dirty OUTPUT_STRIP_TRAILING_WHITESPACE
                ERROR_QUIET)
if(NOT commit_status EQUAL 0 OR NOT commit)
  set(commit "unknown")  # not a git checkout (a source tarball, say)
elseif(dirty)
  string(APPEND commit "-dirty")
endif()

set(text "// Generated at build time by cmake/git_commit.cmake: do not edit.\n#pragma once\n#define SELFNORM_GIT_COMMIT \"${commit}\"\n")
set(old "")
if(EXISTS "${OUTPUT}")
  file(READ "${OUTPUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUTPUT}" "${text}")
endif()
