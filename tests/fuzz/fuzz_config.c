/* libFuzzer driver for the config loader: any input either loads or fails
 * with a message, never crashes or leaks; a loaded config finds every model
 * by its id and by each alias, and its precomputed bodies are valid JSON.
 * Host names are never looked up (sl_config_fuzzing), so no DNS. */
#include "sluice/config.h"

#include <jansson.h>
#include <string.h>

/* Read by src/config.c (weak there): numeric hosts only while fuzzing. */
const bool sl_config_fuzzing = true;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	/* So that "env:FUZZ_KEY" resolves and "env:FUZZ_UNSET" does not. */
	setenv("FUZZ_KEY", "sk-fuzz", 1);
	unsetenv("FUZZ_UNSET");
	return 0;
}

static void check_json(const char *text, size_t len)
{
	json_error_t jerr;
	SL_ASSERT(text && strlen(text) == len);
	json_t *j = json_loadb(text, len, 0, &jerr);
	SL_ASSERT(j != NULL);
	json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sl_config *c = NULL;
	char err[256];
	int rc = sl_config_load_string((const char *)data, size, "fuzz", &c, err, sizeof(err));
	if (rc != 0) {
		SL_ASSERT(c == NULL);
		SL_ASSERT(err[0] != '\0' && strlen(err) < sizeof(err));
		for (const char *p = err; *p; p++)
			SL_ASSERT((unsigned char)*p >= 0x20 && *p != 0x7f); /* one line */
		return 0;
	}
	SL_ASSERT(c != NULL && c->num_listeners > 0 && c->num_models > 0);
	for (uint32_t i = 0; i < c->num_models; i++) {
		const struct sl_model_config *m = &c->models[i];
		SL_ASSERT(sl_config_find_model(c, m->id, strlen(m->id)) == m);
		for (uint32_t k = 0; k < m->num_aliases; k++)
			SL_ASSERT(sl_config_find_model(c, m->aliases[k], strlen(m->aliases[k])) == m);
		SL_ASSERT(m->num_targets > 0);
		for (uint32_t t = 0; t < m->num_targets; t++)
			SL_ASSERT(m->targets[t].provider < c->num_providers);
		check_json(m->json, m->json_len);
	}
	check_json(c->models_json, c->models_json_len);
	for (uint32_t i = 0; i < c->num_providers; i++)
		SL_ASSERT(c->providers[i].num_keys > 0 && c->providers[i].addr_len > 0);
	SL_ASSERT(sl_config_find_model(c, "", 0) == NULL);
	sl_config_free(c);
	return 0;
}
