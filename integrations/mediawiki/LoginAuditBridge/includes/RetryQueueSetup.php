<?php
/**
 * Gives the retry job its own database-queue settings so a failed retry is retried later.
 *
 * @file
 */

namespace MediaWiki\Extension\LoginAuditBridge;

class RetryQueueSetup {
	/**
	 * extension.json callback; runs after LocalSettings.php, so an admin's own
	 * $wgJobTypeConf['loginAuditBridgeSend'] wins.
	 */
	public static function onRegistration(): void {
		global $wgJobTypeConf, $wgLoginAuditBridgeRetryDelay, $wgLoginAuditBridgeMaxRetries;
		if ( isset( $wgJobTypeConf[SendJob::TYPE] ) ) {
			return;
		}
		$default = $wgJobTypeConf['default'] ?? [];
		if ( ltrim( (string)( $default['class'] ?? '' ), '\\' ) !== 'JobQueueDB' ) {
			// Other queues (Redis: delayed jobs) take the re-enqueue path in SendJob.
			return;
		}
		// JobQueueDB re-offers a claimed, unacknowledged job after claimTTL seconds, until it was
		// claimed maxTries times: that is the retry schedule of the database queue.
		$wgJobTypeConf[SendJob::TYPE] = [
			'claimTTL' => max( 1, (int)$wgLoginAuditBridgeRetryDelay ),
			'maxTries' => max( 1, (int)$wgLoginAuditBridgeMaxRetries ),
		] + $default;
	}
}
